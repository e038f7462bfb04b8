from agents import Agent, ModelSettings, TResponseInputItem, Runner, RunConfig, trace
from openai import AsyncOpenAI
from types import SimpleNamespace
from guardrails.runtime import load_config_bundle, instantiate_guardrails, run_guardrails
from pydantic import BaseModel

# Shared client for guardrails and file search
client = AsyncOpenAI()
ctx = SimpleNamespace(guardrail_llm=client)
# Guardrails definitions
check_request_config = {
  "guardrails": [
    { "name": "NSFW Text", "config": { "model": "gpt-4.1-mini", "confidence_threshold": 0.7 } },
    { "name": "URL Filter", "config": { "url_allow_list": ["northwind.example"] } },
    { "name": "Custom Prompt Check", "config": { "model": "gpt-4.1-mini", "confidence_threshold": 0.7, "system_prompt_details": "Flag requests about our competitors' prices." } },
    { "name": "Prompt Injection Detection", "config": { "model": "gpt-4.1-mini", "confidence_threshold": 0.7 } }
  ]
}
check_answer_config = {
  "guardrails": [
    { "name": "Hallucination Detection", "config": { "model": "gpt-4.1-mini", "confidence_threshold": 0.7, "knowledge_source": "vs_6933d5e6f7a88190b2c3d4e5f6a7b8c9" } }
  ]
}
# Guardrails utils

def guardrails_has_tripwire(results):
    return any(getattr(r, "tripwire_triggered", False) is True for r in (results or []))

def get_guardrail_checked_text(results, fallback_text):
    for r in (results or []):
        info = getattr(r, "info", None) or {}
        if isinstance(info, dict) and ("checked_text" in info):
            return info.get("checked_text") or fallback_text
    return fallback_text

def build_guardrail_fail_output(results):
    failures = []
    for r in (results or []):
        if getattr(r, "tripwire_triggered", False):
            info = getattr(r, "info", None) or {}
            failure = {
                "guardrail_name": info.get("guardrail_name"),
            }
            for key in ("flagged", "confidence", "threshold", "hallucination_type", "hallucinated_statements", "verified_statements"):
                if key in (info or {}):
                    failure[key] = info.get(key)
            failures.append(failure)
    return {"failed": len(failures) > 0, "failures": failures}
shop_assistant = Agent(
  name="Shop assistant",
  instructions="""You answer questions about Northwind Bikes' catalogue.""",
  model="gpt-4.1-mini",
  model_settings=ModelSettings(
    temperature=1,
    top_p=1,
    max_tokens=2048,
    store=True
  )
)


class WorkflowInput(BaseModel):
  input_as_text: str


# Main code entrypoint
async def run_workflow(workflow_input: WorkflowInput):
  with trace("Shop assistant"):
    state = {

    }
    workflow = workflow_input.model_dump()
    conversation_history: list[TResponseInputItem] = [
      {
        "role": "user",
        "content": [
          {
            "type": "input_text",
            "text": workflow["input_as_text"]
          }
        ]
      }
    ]
    guardrails_inputtext = workflow["input_as_text"]
    guardrails_result = await run_guardrails(ctx, guardrails_inputtext, "text/plain", instantiate_guardrails(load_config_bundle(check_request_config)), suppress_tripwire=True)
    guardrails_hastripwire = guardrails_has_tripwire(guardrails_result)
    guardrails_anonymizedtext = get_guardrail_checked_text(guardrails_result, guardrails_inputtext)
    guardrails_output = (guardrails_hastripwire and build_guardrail_fail_output(guardrails_result or [])) or (guardrails_anonymizedtext or guardrails_inputtext)
    if guardrails_hastripwire:
      return guardrails_output
    else:
      shop_assistant_result_temp = await Runner.run(
        shop_assistant,
        input=[
          *conversation_history
        ],
        run_config=RunConfig(trace_metadata={
          "__trace_source__": "agent-builder",
          "workflow_id": "wf_6933d5e6f7a88190b2c3d4e5f6a7b8c9"
        })
      )

      conversation_history.extend([item.to_input_item() for item in shop_assistant_result_temp.new_items])

      shop_assistant_result = {
        "output_text": shop_assistant_result_temp.final_output_as(str)
      }
      guardrails_inputtext = shop_assistant_result["output_text"]
      guardrails_result = await run_guardrails(ctx, guardrails_inputtext, "text/plain", instantiate_guardrails(load_config_bundle(check_answer_config)), suppress_tripwire=True)
      guardrails_hastripwire = guardrails_has_tripwire(guardrails_result)
      if guardrails_hastripwire:
        return build_guardrail_fail_output(guardrails_result or [])
      else:
        return shop_assistant_result

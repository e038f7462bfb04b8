from agents import Agent, ModelSettings, TResponseInputItem, Runner, RunConfig, trace
from openai import AsyncOpenAI
from openai.types.shared.reasoning import Reasoning
from pydantic import BaseModel

# Shared client for guardrails and file search
client = AsyncOpenAI()
helpdesk = Agent(
  name="Helpdesk",
  instructions="""You are the helpdesk of Northwind Bikes. Answer in two sentences or fewer.""",
  model="gpt-5.1",
  model_settings=ModelSettings(
    store=True,
    reasoning=Reasoning(
      effort="low",
      summary="auto"
    )
  )
)


class WorkflowInput(BaseModel):
  input_as_text: str


# Main code entrypoint
async def run_workflow(workflow_input: WorkflowInput):
  with trace("Helpdesk"):
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
    helpdesk_result_temp = await Runner.run(
      helpdesk,
      input=[
        *conversation_history
      ],
      run_config=RunConfig(trace_metadata={
        "__trace_source__": "agent-builder",
        "workflow_id": "wf_6930f1c2d4e8819088a1b2c3d4e5f6a7"
      })
    )

    conversation_history.extend([item.to_input_item() for item in helpdesk_result_temp.new_items])

    helpdesk_result = {
      "output_text": helpdesk_result_temp.final_output_as(str)
    }
    return helpdesk_result

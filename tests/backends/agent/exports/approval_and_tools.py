from agents import function_tool, Agent, ModelSettings, TResponseInputItem, Runner, RunConfig, trace
from pydantic import BaseModel

# Tool definitions
@function_tool
def lookup_part(sku: string,null, quantity: integer):
  pass

parts_agent = Agent(
  name="Parts agent",
  instructions="""You find spare parts for Northwind Bikes' workshop. Use lookup_part.""",
  model="gpt-4.1-mini",
  tools=[
    lookup_part
  ],
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
  with trace("Workshop"):
    state = {
      "attempts": 0,
      "approved": False
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
    approval_message = "Order parts for this repair?"

    if approval_request(approval_message):
      state["approved"] = True
      while state["attempts"] < 1:
        state["attempts"] = state["attempts"] + 1
        parts_agent_result_temp = await Runner.run(
          parts_agent,
          input=[
            *conversation_history
          ],
          run_config=RunConfig(trace_metadata={
            "__trace_source__": "agent-builder",
            "workflow_id": "wf_6932b0c1d2e3819055d4c3b2a1f0e9d8"
          })
        )

        conversation_history.extend([item.to_input_item() for item in parts_agent_result_temp.new_items])

        parts_agent_result = {
          "output_text": parts_agent_result_temp.final_output_as(str)
        }
      transform_result = {"reply": parts_agent_result["output_text"], "attempts": state["attempts"]}
      end_result = {
        "response": transform_result["reply"]
      }
      return end_result
    else:
      end_result = {
        "response": "The order was not approved."
      }
      return end_result

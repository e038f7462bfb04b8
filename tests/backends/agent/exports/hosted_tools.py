from agents import WebSearchTool, FileSearchTool, CodeInterpreterTool, HostedMCPTool, Agent, ModelSettings, TResponseInputItem, Runner, RunConfig, trace
from openai import AsyncOpenAI
from pydantic import BaseModel

# Tool definitions
web_search_preview = WebSearchTool(
  search_context_size="medium",
  user_location={
    "type": "approximate"
  }
)
file_search = FileSearchTool(
  vector_store_ids=[
    "vs_6932c4d5e6f78190a1b2c3d4e5f6a7b8"
  ]
)
code_interpreter = CodeInterpreterTool(tool_config={
  "type": "code_interpreter",
  "container": {
    "type": "auto",
    "file_ids": [

    ]
  }
})
mcp = HostedMCPTool(tool_config={
  "type": "mcp",
  "server_label": "inventory",
  "allowed_tools": [
    "list_stock"
  ],
  "require_approval": "never",
  "server_url": "https://inventory.example.com/mcp"
})
# Shared client for guardrails and file search
client = AsyncOpenAI()
researcher = Agent(
  name="Researcher",
  instructions="""Research the user's question about bicycle components with every tool you have.""",
  model="gpt-4.1",
  tools=[
    web_search_preview,
    file_search,
    code_interpreter,
    mcp
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
  with trace("Research"):
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
    researcher_result_temp = await Runner.run(
      researcher,
      input=[
        *conversation_history
      ],
      run_config=RunConfig(trace_metadata={
        "__trace_source__": "agent-builder",
        "workflow_id": "wf_6932c4d5e6f78190a1b2c3d4e5f6a7b8"
      })
    )

    conversation_history.extend([item.to_input_item() for item in researcher_result_temp.new_items])

    researcher_result = {
      "output_text": researcher_result_temp.final_output_as(str)
    }
    return researcher_result

"""An example Agent Builder export, in the shape the "Code → Agents SDK → Python" button
produces: agents at module level, a ``WorkflowInput`` model, and ``async def run_workflow``
that calls ``Runner.run``. Drop a file like this next to the broker and point a workflow at
it, unchanged::

    [workflows.triage]
    agent = "examples/agent/builder_export.py:run_workflow"

The broker streams each ``Runner.run`` (it rebinds this module's ``Runner``), hides the
classifier's JSON (it has an ``output_type``), and puts the earlier turns of the chat in
front of each run, since ``input_as_text`` carries only the newest message.
"""

from agents import Agent, ModelSettings, RunConfig, Runner, TResponseInputItem, trace
from pydantic import BaseModel


class TopicSchema(BaseModel):
    topic: str


classifier = Agent(
    name="Classifier",
    instructions="Classify the user's message as 'billing' or 'other'.",
    model="gpt-4.1-mini",
    output_type=TopicSchema,
    model_settings=ModelSettings(store=True),
)

billing_agent = Agent(
    name="Billing",
    instructions="You answer billing questions for Example Inc. Be brief.",
    model="gpt-4.1-mini",
    model_settings=ModelSettings(store=True),
)

general_agent = Agent(
    name="General",
    instructions="You answer general questions for Example Inc. Be brief.",
    model="gpt-4.1-mini",
    model_settings=ModelSettings(store=True),
)


class WorkflowInput(BaseModel):
    input_as_text: str


# Main code entrypoint
async def run_workflow(workflow_input: WorkflowInput):
    with trace("Triage"):
        workflow = workflow_input.model_dump()
        conversation_history: list[TResponseInputItem] = [
            {"role": "user", "content": [{"type": "input_text", "text": workflow["input_as_text"]}]}
        ]
        config = RunConfig(
            trace_metadata={"__trace_source__": "agent-builder", "workflow_id": "wf_example"}
        )
        classified = await Runner.run(classifier, input=[*conversation_history], run_config=config)
        conversation_history.extend([item.to_input_item() for item in classified.new_items])
        topic = classified.final_output.topic
        responder = billing_agent if topic == "billing" else general_agent
        answered = await Runner.run(responder, input=[*conversation_history], run_config=config)
        return {"output_text": answered.final_output_as(str), "topic": topic}

"""Workflow models (broker/workflow.py and each kind's backends/<kind>/workflow.py): the file's
tables validated by the model the broker then reads, every mistake named with its key."""

from __future__ import annotations

import pydantic
import pytest

from broker.backends import KINDS, kind_of
from broker.config import ConfigError, Workflow, load_settings
from broker.workflow import Workflow as Base

from .support import WF_SUPPORT


def problems_in(tmp_path, toml: str) -> str:
    f = tmp_path / "wf.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings({"BROKER_MOCK": "1", "BROKER_WORKFLOWS_FILE": str(f)})
    return "\n".join(info.value.problems)


def test_a_mistyped_key_is_named_with_the_closest_known_one(tmp_path):
    text = problems_in(
        tmp_path,
        '[workflows.docs]\nserver = "https://chat.internal/chatkit"\nidle_timout = 30\n'
        f'[workflows.old]\nid = "{WF_SUPPORT}"\nhistory = {{ recent_thread = 3 }}\n'
        '[workflows.coach]\nagent = "a.b:c"\nzzz = 1\n',
    )
    assert (
        "BROKER_WORKFLOWS_FILE [workflows.docs]: unknown option 'idle_timout' "
        "(did you mean 'idle_timeout'?)" in text
    )
    assert "[workflows.old]: unknown history option 'recent_thread' (did you mean" in text
    assert "[workflows.coach]: unknown option 'zzz' (known: " in text


def test_one_mistake_per_kind_is_each_reported_with_its_table_and_key(tmp_path):
    text = problems_in(
        tmp_path,
        f'[workflows.a]\nid = "{WF_SUPPORT}"\ntracing = "yes"\n'
        '[workflows.b]\nserver = "https://x.example.com"\nassertion = "rs256"\n'
        'connect_timeout = "5"\n'
        '[workflows.c]\nagent = "a.b:c"\nmax_messages_per_minute = 0\n',
    )
    for needle in (
        "[workflows.a]: tracing must be true or false",
        "[workflows.b]: assertion must be es256 or hs256",
        "[workflows.b]: connect_timeout must be a number of seconds, 0 < s <= 3600",
        "[workflows.c]: max_messages_per_minute must be a whole number >= 1",
    ):
        assert needle in text, needle


def test_old_flat_calls_build_the_kinds_model():
    gateway = Workflow(name="chat", label="Chat", kind="gateway", server="https://chat.example.com")
    assert type(gateway) is KINDS["gateway"].workflow and isinstance(gateway, Base)
    assert (gateway.id, gateway.agent, gateway.target) == (None, None, "https://chat.example.com")
    assert gateway.idle_timeout == 60.0 and gateway.assertion == "es256"
    hosted = Workflow(name="s", label="S", id=WF_SUPPORT, require={"role": ["a", "b"]})
    assert hosted.kind == "hosted" and hosted.require == (("role", ("a", "b")),)
    assert hosted.server is None and hosted.forward_claims == ()
    with pytest.raises(pydantic.ValidationError):
        hosted.__class__.model_validate({"name": "s", "id": WF_SUPPORT, "server": "x"})
    with pytest.raises(pydantic.ValidationError):
        hosted.label = "changed"  # frozen
    assert hash(hosted) == hash(
        Workflow(name="s", label="S", id=WF_SUPPORT, require={"role": ["a", "b"]})
    )


def test_the_shorthand_kind_is_read_off_the_value_by_each_kind():
    assert [kind_of(v) for v in (WF_SUPPORT, "https://x/y", "a.b:c", "plain")] == [
        "hosted",
        "gateway",
        "agent",
        None,
    ]


def test_every_kind_has_a_model_keyed_by_its_target():
    for kind, spec in KINDS.items():
        assert spec.workflow is not None and spec.workflow.model_fields["kind"].default == kind
        assert spec.workflow.target_key in spec.workflow.model_fields
        assert spec.workflow.model_config.get("extra") == "forbid"

"""Mock mode's canned texts and widget card: what every mock reply says, marked ``[mock]``.

Plain text and one chatkit widget, kept apart from the model that streams them (canned.py)
so the words can be read and changed without the Agents SDK plumbing around them.
"""

from __future__ import annotations

import re

from chatkit.widgets import DynamicWidgetRoot, WidgetRoot

__all__ = [
    "ERROR_MESSAGE",
    "ERROR_START",
    "SLOW_PROGRESS",
    "WIDGET_ACTION",
    "WIDGET_INTRO",
    "echo_reply",
    "long_reply",
    "pressed_reply",
    "slow_reply",
    "split_deltas",
    "widget_card",
]

WIDGET_ACTION = "mock.button_pressed"
ERROR_START = "**[mock]** Starting a reply, then failing on purpose…"
ERROR_MESSAGE = "[mock] /error ended this stream with an error event on purpose."
WIDGET_INTRO = "**[mock]** Here is a small widget card:"
SLOW_PROGRESS = "[mock] Typing slowly…"


def split_deltas(text: str, pieces: int) -> list[str]:
    """Split text on word boundaries into about `pieces` chunks that join back to it exactly."""
    tokens = re.findall(r"\s*\S+\s*", text) or [text]
    pieces = max(1, min(pieces, len(tokens)))
    size, extra = divmod(len(tokens), pieces)
    chunks, start = [], 0
    for index in range(pieces):
        end = start + size + (1 if index < extra else 0)
        chunks.append("".join(tokens[start:end]))
        start = end
    return chunks


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.splitlines()) or "> (empty message)"


def echo_reply(text: str) -> str:
    """The ordinary reply: the message quoted back, and the commands worth trying."""
    return (
        f"**[mock]** You wrote:\n\n{_quote(text)}\n\n"
        "This reply comes from chatkit-broker's mock ChatKit backend: no model was called "
        "and nothing left this machine. Send `/slow`, `/long`, `/widget` or `/error` "
        "to see the other states a chat UI must handle."
    )


def slow_reply(text: str, step: float) -> str:
    """``/slow``: long enough to stream over several seconds at ``step`` a piece."""
    return (
        f"**[mock]** This reply streams slowly, one piece every {step:g} s, so you can watch "
        "the typing state and try the stop button. You wrote:\n\n"
        f"{_quote(text)}"
    )


def pressed_reply(action: str) -> str:
    """The answer to a press of the widget card's button (or any widget action)."""
    return f"**[mock]** You pressed the widget button (action `{action}`)."


def long_reply(text: str) -> str:
    """``/long``: headings, lists, a table and a code block, to exercise the renderer."""
    return f"""**[mock]** A long reply, to check scrolling and markdown rendering.

You wrote:

{_quote(text)}

## What the mock backend can do

1. Echo every message, streamed in several deltas.
2. Keep each user's threads apart (in memory, unless `BROKER_DATABASE_URL` names a database).
3. Give threads a title taken from their first message.
4. Answer a few commands:
   - `/slow` streams over several seconds;
   - `/error` ends the stream with an error event;
   - `/long` sends this reply;
   - `/widget` sends a small widget card.

## Commands at a glance

| command | what the UI should show | stream ends with |
| --- | --- | --- |
| `/slow` | a reply that types slowly | `thread.item.done` |
| `/error` | a partial reply, then an error | `error` |
| `/long` | markdown: headings, lists, a table, code | `thread.item.done` |
| `/widget` | a card with a button | `thread.item.done` |

## A code block

```python
import httpx

body = {{
    "type": "threads.list",
    "params": {{"limit": 20}},
}}
reply = httpx.post("http://127.0.0.1:8000/mock/chatkit", json=body)
print(reply.json())
```

> Nothing here came from a model: this text is fixed in `broker/backends/mock/replies.py`.

That is the end of the long mock reply."""


def widget_card(text: str) -> WidgetRoot:
    """A small card with a button, to check that widgets render and their actions round-trip."""
    return DynamicWidgetRoot.model_validate(
        {
            "type": "Card",
            "size": "sm",
            "children": [
                {
                    "type": "Row",
                    "gap": 2,
                    "children": [
                        {"type": "Title", "value": "Mock widget", "size": "sm"},
                        {"type": "Spacer"},
                        {"type": "Badge", "label": "mock", "color": "warning"},
                    ],
                },
                {"type": "Text", "value": f"You wrote: {text or '(nothing)'}"},
                {"type": "Divider"},
                {
                    "type": "Caption",
                    "value": "The button sends a custom action back to the mock backend.",
                },
                {
                    "type": "Button",
                    "label": "Press me",
                    "onClickAction": {"type": WIDGET_ACTION, "payload": {"text": text}},
                },
            ],
        }
    )

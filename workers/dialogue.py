"""What the model is asked: system prompt, the conversation's recent turns, the new message.

Pure functions. Later issues add FAQ answers, intents and hand-off rules here.
"""

from __future__ import annotations

from models.envelope import Turn

# Sent when the model cannot answer (failure, deadline, empty output): nothing goes unanswered.
FALLBACK_REPLY = "抱歉，我暂时无法回答这个问题。您的留言已记录，稍后会有客服人员跟进；如需人工服务，请回复“转人工”。"


def compose(system_prompt: str, history: list[Turn], text: str, max_turns: int) -> list[Turn]:
    """System prompt, the last ``max_turns`` exchanges, then the customer's message."""
    recent = history[-2 * max_turns :] if max_turns > 0 else []
    return [Turn("system", system_prompt), *recent, Turn("user", text)]


def extend_history(history: list[Turn], text: str, reply: str, max_turns: int) -> list[Turn]:
    turns = [*history, Turn("user", text), Turn("assistant", reply)]
    return turns[-2 * max_turns :] if max_turns > 0 else []



"""Prompt and target text: Gemma chat turns around a system prompt and a question.

Gemma has no system role; like Google's tunix GRPO example we put the system
prompt at the top of the user turn.
"""

from __future__ import annotations

from showwork.task.answers import ANSWER_CLOSE, ANSWER_OPEN, REASONING_CLOSE, REASONING_OPEN

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"


def chat_prompt(system: str, question: str) -> str:
    """The text the model continues; it ends where the model's turn begins."""
    return f"{START_OF_TURN}user\n{system}\n\n{question.strip()}{END_OF_TURN}\n{START_OF_TURN}model\n"


def target(reasoning: str, answer: str) -> str:
    """The completion we teach: one reasoning block, one answer block, end of turn."""
    return f"{REASONING_OPEN}\n{reasoning.strip()}\n{REASONING_CLOSE}\n{ANSWER_OPEN}\n{answer.strip()}\n{ANSWER_CLOSE}{END_OF_TURN}"

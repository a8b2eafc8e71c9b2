"""The exceptions llama-agents raises, in three kinds.

1. The model should try again: a malformed call, bad arguments, an unknown tool. These are *not*
   raised to the user; the agent turns them into a tool result the model can read and act on.
   `ModelRetry` is what a tool raises to say so explicitly.
2. The developer misused the API or gave bad input (`UsageError` and its children): raised at once,
   with what is wrong and how to fix it in the message.
3. The run must stop (`RunLimitExceeded`): a limit was reached.

Exceptions carry a message and nothing else; no logging happens in their constructors.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CheckpointError",
    "LlamaAgentsError",
    "ModelRetry",
    "PromptTooLongError",
    "RunLimitExceeded",
    "SandboxUnavailableError",
    "ToolConfigurationError",
    "UsageError",
]


class LlamaAgentsError(Exception):
    """Base class of every error llama-agents raises."""


class ModelRetry(LlamaAgentsError):
    """Raised inside a tool to send its message back to the model as an error result to correct."""


class UsageError(LlamaAgentsError, ValueError):
    """The developer misused the API or passed bad input; the message says how to fix it."""


class CheckpointError(UsageError):
    """A checkpoint is missing, truncated, or does not match its configuration."""


class ToolConfigurationError(UsageError):
    """A tool cannot run as configured (a missing API key, a rejected key, ...)."""


class SandboxUnavailableError(ToolConfigurationError):
    """No OS sandbox can be started for the code interpreter; the message says how to fix that."""


class PromptTooLongError(UsageError):
    """A prompt does not fit the model's context (max_seq_len) with room to generate."""


class BackendError(LlamaAgentsError):
    """A model server could not complete: down, failing, or it cut a reply off (after retries).

    The agent's transcript is left as it was before the failed reply, so the run can be retried.
    """


class RunLimitExceeded(LlamaAgentsError):
    """A run reached one of its limits (max_steps, token budget)."""

"""How a conversation becomes one string: the upstream serialization, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mypt_jax.data.tokenizer import SEED_SPECIAL_TOKENS as _TAGS

# The upstream's CONVERSATION_SYSTEM_PROMPT; prepare always inserts it, whatever a record says.
SYSTEM_PROMPT = "You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly."

_ROLE_TAGS = {
    "user": (_TAGS["myPT_user_open"], _TAGS["myPT_user_close"]),
    "assistant": (_TAGS["myPT_assistant_open"], _TAGS["myPT_assistant_close"]),
}
ROLES = tuple(_ROLE_TAGS)


def system_block(system: str = SYSTEM_PROMPT) -> str:
    return f"{_TAGS['myPT_system_open']}{system}{_TAGS['myPT_system_close']}"


def serialize_conversation(messages: Iterable[Mapping], system: str = SYSTEM_PROMPT) -> str:
    """System block, each user/assistant turn in its tags, one trailing eot; no whitespace added.

    As upstream: a missing role is "user", missing content is "", other roles are dropped
    (prepare rejects them before calling this unless told to skip them).
    """
    parts = [system_block(system)]
    for message in messages:
        tags = _ROLE_TAGS.get(message.get("role", "user"))
        if tags is not None:
            parts.append(f"{tags[0]}{message.get('content', '')}{tags[1]}")
    parts.append(_TAGS["myPT_eot"])
    return "".join(parts)


def chat_prompt(question: str, system: str = SYSTEM_PROMPT) -> str:
    """The generation prompt of the seed doc: system, user turn, open assistant tag."""
    user_open, user_close = _ROLE_TAGS["user"]
    return f"{system_block(system)}{user_open}{question}{user_close}{_ROLE_TAGS['assistant'][0]}"

"""Deterministic names: readable text plus a short hash when the text must be cut.

Compiled object names are DNS subdomains (at most 253 characters). A namespace
never contains a dot, so ``<prefix>.<namespace>.<name>`` is unique; when that is
too long it is cut and a hash of the full text is appended. nftables names use the
same idea with a tighter budget (see the renderer).
"""

from __future__ import annotations

import functools
import hashlib
import sys

MAX_OBJECT_NAME = 253


def short_hash(text: str, length: int = 8) -> str:
    """A stable hex digest prefix of ``text`` (blake2b: fast, not a security boundary)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]


def bounded(text: str, limit: int, sep: str = "-") -> str:
    """``text`` if it fits ``limit``, else its head plus ``sep`` plus a hash of all of it."""
    if len(text) <= limit:
        return text
    digest = short_hash(text)
    head = text[: limit - len(digest) - len(sep)].rstrip(".-_")
    return f"{head}{sep}{digest}"


def compiled_group_name(namespace: str, name: str) -> str:
    """CompiledSecurityGroup name of the group ``namespace/name`` (interned: every pod
    entry of a node object names its groups)."""
    return sys.intern(bounded(f"sg.{namespace}.{name}", MAX_OBJECT_NAME))


def sg_set_name(namespace: str, name: str) -> str:
    """CompiledAddressSet name of the members of security group ``namespace/name``."""
    return sys.intern(bounded(f"sg.{namespace}.{name}", MAX_OBJECT_NAME))


def ipag_set_name(namespace: str, name: str) -> str:
    """CompiledAddressSet name of IP address group ``namespace/name``."""
    return bounded(f"ipag.{namespace}.{name}", MAX_OBJECT_NAME)


# How a node object's ``requires`` (and an agent's epochs) name the groups and sets its pods
# use. Interned and memoised: 1,000 node objects name the same groups and sets (a cold
# start holds 750,000 refs until they are written), and making each anew cost ~1 M
# f-strings and intern calls per initial build at 30,000 pods.
@functools.lru_cache(maxsize=1 << 16)
def group_ref(compiled_group: str) -> str:
    """``group/<name>``: the ref of CompiledSecurityGroup ``compiled_group``."""
    return sys.intern(f"group/{compiled_group}")


@functools.lru_cache(maxsize=1 << 16)
def set_ref(compiled_set: str) -> str:
    """``set/<name>``: the ref of CompiledAddressSet ``compiled_set``."""
    return sys.intern(f"set/{compiled_set}")


# Compiled groups and sets carry one label per node that uses them, so that each node
# agent watches only its own objects with one label selector per kind.
NODE_LABEL_PREFIX = "node.secgroups.dev/"


def node_label(node: str) -> str:
    """The label key marking a compiled object as used on ``node`` (value ``""``).

    Node names are DNS subdomains, valid label names when at most 63 characters;
    longer ones are cut and hashed like object names.
    """
    # interned: a cold start holds the node labels of every group and set at once
    return sys.intern(NODE_LABEL_PREFIX + bounded(node, 63))

"""The public repos' option names, accepted as aliases of the policies' keywords, and the resolver.

``generate(model, prompt, policy="streaming", window_size=96, confidence_alpha=0.3)`` runs what
Streaming-dLLM's scripts call with those names. Each decoder's aliases are part of its section in
:mod:`dllm_kernels.policies.published` (:attr:`Decoder.aliases`, :attr:`Decoder.adapt`;
:func:`~dllm_kernels.policies.published.markdown_table` lists them). Names the repos share with us
(``threshold``, ``spatial_threshold``, ``temporal_steps``, ...) need no alias. An alias given
together with the name it stands for is an error, as is a public value this library does not
implement (R2's "mid" and "random" token clusters, LLaDA's random remasking, Fast-dLLM's
``factor`` rule).
"""

from __future__ import annotations

import dataclasses

from .base import Policy
from .published import DECODERS, POLICIES

_POLICY_FIELDS = {f.name for f in dataclasses.fields(Policy)}
# aliases accepted on a Policy instance: the plain renames whose target is a Policy field
POLICY_FIELD_RENAMES = {
    a.public: a.ours
    for d in DECODERS.values()
    for a in d.aliases
    if a.convert is None and a.public != a.ours and a.ours in _POLICY_FIELDS
}
_UNSUPPORTED = {"factor": "Fast-dLLM's factor rule is not implemented; use threshold"}


def public_aliases(policy, overrides: dict, *, gen_length: int | None = None, block_length: int | None = None) -> dict:
    """``overrides`` with every public option name of ``policy`` (a name or a Policy) replaced by
    ours (the decoder's section in :mod:`~dllm_kernels.policies.published`). ``gen_length`` /
    ``block_length`` turn LLaDA's total ``steps`` into ``steps_per_block``. Raises ValueError on
    an alias given with its target, or on a public value without an equivalent here. Applying it
    twice changes nothing more."""
    out = dict(overrides)
    name = policy if isinstance(policy, str) else None
    label = f"policy {policy!r}" if name else f"policy {getattr(policy, 'name', policy)!r}"
    decoder = DECODERS.get(name) if name else None

    for key, why in _UNSUPPORTED.items():
        if key in out:
            raise ValueError(f"{label}: {key}: {why}")
    if name is None:
        aliases = [(public, ours, None) for public, ours in POLICY_FIELD_RENAMES.items()]
    else:
        aliases = [(a.public, a.ours, a.convert) for a in decoder.aliases] if decoder else []
    for public, ours, _ in aliases:
        if public != ours and public in out:
            if ours in out:
                raise ValueError(f"{label}: {public} is the public name of {ours}; pass one of them, not both")
            out[ours] = out.pop(public)
    for _, ours, convert in aliases:
        if convert is not None and ours in out:
            out[ours] = convert(label, out[ours])
    if decoder is not None and decoder.adapt is not None:
        decoder.adapt(label, out, gen_length, block_length)
    if name is not None and "steps" in out:
        raise ValueError(f"{label}: steps (LLaDA's fixed schedule) has no effect on a threshold/entropy rule; drop it")
    return out


def resolve_policy(
    policy: str | Policy, *, gen_length: int | None = None, block_length: int | None = None, **overrides
) -> Policy:
    """A named policy with its constructor's keyword overrides, or a :class:`Policy` as is
    (then ``overrides`` replace its fields). The public repos' option names are accepted as
    aliases (:func:`public_aliases`; LLaDA's total ``steps`` needs ``gen_length`` and
    ``block_length``)."""
    overrides = public_aliases(policy, overrides, gen_length=gen_length, block_length=block_length)
    if isinstance(policy, Policy):
        return dataclasses.replace(policy, **overrides) if overrides else policy
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}")
    try:
        return POLICIES[policy](**overrides)
    except TypeError as e:  # an unknown keyword; the policy's own checks already name it
        raise TypeError(str(e) if str(e).startswith(f"policy {policy}:") else f"policy {policy!r}: {e}") from None

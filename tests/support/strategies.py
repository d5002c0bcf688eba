"""Hypothesis strategies shared by the property tests: source snapshots and failure points."""

from __future__ import annotations

from hypothesis import strategies as st

IDS = [f"m{i:02d}" for i in range(24)]
#: one source snapshot: member key -> which of two email variants the member has
snapshot = st.dictionaries(st.sampled_from(IDS), st.sampled_from(["a", "b"]), max_size=len(IDS))
#: no failure, or the memory destination failing before/after applying its n-th batch
failure = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["fail_before_apply", "fail_after_apply"]), st.integers(min_value=1, max_value=6)),
)

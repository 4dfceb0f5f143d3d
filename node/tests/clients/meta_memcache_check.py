"""meta-memcache (RevenueCat's Python client, which speaks only the meta protocol) against
a server: the high-level calls an application makes, each checked. Run by
tests/third_party.rs as `python3 meta_memcache_check.py PORT`; exits non-zero on the first
failure, naming it."""

import sys

from meta_memcache import (
    CacheClient,
    Key,
    LeasePolicy,
    RecachePolicy,
    ServerAddress,
    StalePolicy,
    connection_pool_factory_builder,
)

port = int(sys.argv[1])
client = CacheClient.cache_client_from_servers(
    servers=[ServerAddress(host="127.0.0.1", port=port)],
    connection_pool_factory_fn=connection_pool_factory_builder(),
)


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


check("set", client.set(key=Key("doc"), value={"a": 1, "b": [2, 3]}, ttl=100), True)
check("get", client.get(key=Key("doc")), {"a": 1, "b": [2, 3]})
check("get_typed", client.get_typed(key=Key("doc"), cls=dict), {"a": 1, "b": [2, 3]})
value, cas = client.get_cas(key=Key("doc"))
check("get_cas value", value, {"a": 1, "b": [2, 3]})
check("set with the CAS read", client.set(key=Key("doc"), value="v2", ttl=100, cas_token=cas), True)
check("set with a stale CAS", client.set(key=Key("doc"), value="v3", ttl=100, cas_token=cas), False)
check("get after CAS sets", client.get(key=Key("doc")), "v2")
got = client.multi_get(keys=[Key("doc"), Key("missing")])
check("multi_get", {k.key: v for k, v in got.items()}, {"doc": "v2", "missing": None})
check("touch", client.touch(key=Key("doc"), ttl=50), True)
check("touch of a missing key", client.touch(key=Key("missing"), ttl=50), False)
check("delta_initialize", client.delta_initialize(key=Key("counter"), delta=5, initial_value=10, initial_ttl=60), True)
check("delta", client.delta(key=Key("counter"), delta=5), True)
check("delta_and_get", client.delta_and_get(key=Key("counter"), delta=1), 16)
check("delta of a missing key", client.delta(key=Key("missing"), delta=1), False)
check("refill", client.refill(key=Key("r"), value="first", ttl=10), True)
check("refill of a present key", client.refill(key=Key("r"), value="second", ttl=10), False)
check("get after refill", client.get(key=Key("r")), "first")
check("delete", client.delete(key=Key("doc")), True)
check("get after delete", client.get(key=Key("doc")), None)
# Keys the client sends in base64 (not ASCII) and values that are bytes.
check("set unicode key", client.set(key=Key("ключ"), value=b"\x00\x01\xff", ttl=0), True)
check("get unicode key", client.get(key=Key("ключ")), b"\x00\x01\xff")
large = "x" * 200_000
check("set large", client.set(key=Key("large"), value=large, ttl=0), True)
check("get large", client.get(key=Key("large")), large)
# Herd control with win tokens (mg's N and R). A lease on a missing key: the first caller
# wins (it reads a miss and fills the key), a second one loses, waits and retries, and reads
# a miss once out of retries; after the fill, the value.
lease = LeasePolicy(ttl=30, miss_retries=2, miss_retry_wait=0.01, miss_max_retry_wait=0.02)
value, cas = client.get_or_lease_cas(key=Key("leased"), lease_policy=lease)
check("get_or_lease of a missing key wins (a miss)", value, None)
waits = []
value = client.get_or_lease(key=Key("leased"), lease_policy=lease, lease_wait_fn=waits.append)
check("a second get_or_lease loses and runs out of retries (a miss)", value, None)
check("the loser retried once (miss_retries=2)", len(waits), 1)
check("the winner fills the key with the lease's CAS", client.set(key=Key("leased"), value="filled", ttl=100, cas_token=cas), True)
check("get_or_lease after the fill", client.get_or_lease(key=Key("leased"), lease_policy=lease), "filled")
# Recache: an item with less time left than the policy's TTL is a miss for the first caller
# (it recomputes the value), the others keep reading it.
check("set soon to expire", client.set(key=Key("hot"), value="v", ttl=10), True)
recache = RecachePolicy(ttl=30)
check("the first recache caller wins (a miss)", client.get(key=Key("hot"), recache_policy=recache), None)
check("the next one reads the value", client.get(key=Key("hot"), recache_policy=recache), "v")
check("set far from expiring", client.set(key=Key("cold"), value="c", ttl=1000), True)
check("no recache with time to spare", client.get(key=Key("cold"), recache_policy=recache), "c")
# Stale items: a delete that marks the item stale (md I T), then the first reader is told to
# recompute (a miss, it won the token), the next ones read the stale value; a write with an
# outdated CAS is kept as stale instead of failing (ms I); a fresh write ends it.
stale = StalePolicy(mark_stale_on_deletion_ttl=30, mark_stale_on_cas_mismatch=True)
check("set before invalidation", client.set(key=Key("page"), value="v1", ttl=100), True)
_, old_cas = client.get_cas(key=Key("page"))
check("delete marking stale", client.delete(key=Key("page"), stale_policy=stale), True)
check("the first reader of a stale item wins (a miss)", client.get(key=Key("page")), None)
check("the next reader gets the stale value", client.get(key=Key("page")), "v1")
check(
    "a write with an outdated CAS is stored as stale",
    client.set(key=Key("page"), value="late", ttl=100, cas_token=old_cas, stale_policy=stale),
    True,
)
check("the stale write is served to the token's losers", client.get(key=Key("page")), "late")
check("a fresh write", client.set(key=Key("page"), value="v2", ttl=100), True)
check("read after the fresh write", client.get(key=Key("page")), "v2")
check("delete marking stale a missing key", client.delete(key=Key("nope"), stale_policy=stale), False)
print("meta-memcache: all checks passed")

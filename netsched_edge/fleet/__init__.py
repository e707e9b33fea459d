"""The edge fleet: several edge hosts behind a QUIC-LB forwarder, coordinated
through etcd (docs/FLEET.md).

- `etcd`: an async client of etcd's v3 JSON gateway (keys, transactions,
  leases kept alive, watches);
- `layout`: which etcd keys hold what, under one prefix;
- `membership`: hosts register under a lease and hold a QUIC-LB server ID;
- `election`: one leader per role, by lease and transaction;
- `shared_keys`: ticket / Retry / reset keys in etcd, rotated by the elected
  member, the previous ones kept for a grace period;
- `cid_config`: the fleet's QUIC-LB configuration (codepoint, lengths, key);
- `config_watch`: the edge config in etcd, applied or refused by each host;
- `host`: all of the above for one edge host (`FleetHost`), beside its server;
- `cli` (`python -m netsched_edge.fleet`): put the config, show the members.
"""

"""NetSched's QUIC interop suite: our client and edge against other QUIC stacks.

Modelled on the QUIC Interop Runner (same case names, pass rules and endpoint
contract) but run on one machine: real processes on loopback, with a tap in
between that reads what an on-path observer can. See interop/README.md.

Nothing in this package is imported by `netsched_client` or `netsched_edge`;
`interop.programs` runs inside other stacks' interpreters and imports only the
standard library and that stack.
"""

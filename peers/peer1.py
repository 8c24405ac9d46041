"""peer1: joins through 127.0.0.1:9999, stores b'sudo python' and prints its key.

    ipython -i peers/peer1.py    # then `peer` and `sync` are ready at the prompt
    python peers/peer1.py        # serves until Ctrl-C

The key printed is 44523492095186523269265158000087001266127815262863473237438729878159874507476,
the SHA-256 of the value. Options: --host, --port (default 9997), --bootstrap HOST:PORT (default
127.0.0.1:9999); or QADOM_HOST, QADOM_PORT and QADOM_BOOTSTRAP in the environment.
"""

from qadom.interactive import (
    blocking,
    keep_serving,
    script_errors,
    script_options,
    script_print,
    start_script_peer,
)

with script_errors("peer1"):  # a failure ends it in one line, Ctrl-C quietly
    options = script_options("store b'sudo python' in qadom and print its key", port=9997,
                             bootstrap=["127.0.0.1:9999"])
    peer = start_script_peer("peer1", options)
    sync = blocking(peer)
    script_print(f"peer1 listening on {peer.address[0]}:{peer.address[1]}")
    key = sync.set(b"sudo python")
    script_print(key)
    keep_serving()

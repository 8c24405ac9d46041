"""peer2: joins through 127.0.0.1:9999, gets the key peer1 stored and prints b'sudo python'.

    ipython -i peers/peer2.py    # then `peer` and `sync` are ready at the prompt
    python peers/peer2.py        # serves until Ctrl-C

Options: --host, --port (default 9996), --bootstrap HOST:PORT (default 127.0.0.1:9999); or
QADOM_HOST, QADOM_PORT and QADOM_BOOTSTRAP in the environment.
"""

from qadom.interactive import (
    blocking,
    keep_serving,
    script_errors,
    script_options,
    script_print,
    start_script_peer,
)

KEY = 44523492095186523269265158000087001266127815262863473237438729878159874507476

# A failure ends it in one line, Ctrl-C quietly.
with script_errors("peer2", not_found="peers/peer1.py stores it: run it first"):
    options = script_options("get b'sudo python' back from qadom", port=9996,
                             bootstrap=["127.0.0.1:9999"])
    peer = start_script_peer("peer2", options)
    sync = blocking(peer)
    script_print(f"peer2 listening on {peer.address[0]}:{peer.address[1]}")
    value = sync.get(KEY)
    script_print(value)
    keep_serving()

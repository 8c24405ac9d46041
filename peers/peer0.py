"""peer0: a qadom peer that waits for others, on 127.0.0.1:9999.

    ipython -i peers/peer0.py    # then, at the prompt: await peer.get(KEY) or sync.get(KEY)
    python peers/peer0.py        # serves until Ctrl-C

Options: --host, --port (0 picks a free port), --bootstrap HOST:PORT; or the environment variables
QADOM_HOST, QADOM_PORT and QADOM_BOOTSTRAP. The peer answers other peers all the time, also while
the IPython prompt waits for input (see qadom.interactive).
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

with script_errors("peer0"):  # a failure ends it in one line, Ctrl-C quietly
    options = script_options("a qadom peer that waits for others", port=9999)
    peer = start_script_peer("peer0", options)
    sync = blocking(peer)  # sync.get(KEY): the blocking form of `await peer.get(KEY)`
    script_print(f"peer0 listening on {peer.address[0]}:{peer.address[1]}")
    keep_serving()

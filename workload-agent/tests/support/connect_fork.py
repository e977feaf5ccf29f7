"""The attacker of tests/socket_pinning.rs: connect to the agent, fork, let the child hand the
connection on, then (in the process that connected) exec another binary or exit.

Usage: connect_fork.py AGENT_SOCKET BACK_SOCKET exec|exit [ARGV...]

The connecting process (this one) opens the agent connection and forks. The child keeps the
connection and passes it (SCM_RIGHTS) over BACK_SOCKET to the test, which makes the calls on
it, then waits until the test closes BACK_SOCKET. The parent waits for a line on stdin, then
`exec`s ARGV (keeping its PID, so the agent's pin on the PID stays valid) or exits.
Standard library only.
"""

import os
import socket
import sys

agent, back, mode = sys.argv[1], sys.argv[2], sys.argv[3]
argv = sys.argv[4:]

conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(agent)

child = os.fork()
if child == 0:
    to_test = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    to_test.connect(back)
    socket.send_fds(to_test, [b"c"], [conn.fileno()])
    to_test.recv(1)
    os._exit(0)

sys.stdin.readline()
if mode == "exec":
    os.execv(argv[0], argv)
os._exit(0)

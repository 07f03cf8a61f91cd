"""The master<->worker link: the sans-IO message codec and the channel that carries messages
and file descriptors (the only ``sendmsg``/``recvmsg`` with ``SCM_RIGHTS``). Used by both
processes."""

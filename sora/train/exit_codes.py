"""Process exit codes the trainers and the launchers agree on."""

# A checkpoint or the run directory could not be written (disk full, read-only, not a directory):
# nothing to gain from a requeue until someone frees space. 74 is EX_IOERR in sysexits.h.
STORAGE = 74
# Checkpointed on SIGTERM/SIGUSR1 (preemption or time limit) and exited: requeue and resume.
# 75 is EX_TEMPFAIL in sysexits.h: "a temporary failure; the user is invited to retry".
PREEMPTED = 75
# K non-finite steps in a row: stopped, the last good checkpoint is kept. Do not requeue.
DIVERGED = 76

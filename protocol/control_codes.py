"""drivebayctl's exit codes, as supervisorctl 4.x uses them (no imports: fast)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING_STATE = 3  # status: something matched is STOPPED/FATAL/INVALID/BLOCKED
EXIT_NO_SUCH = 4  # unknown name, or no daemon to talk to
EXIT_NOT_RUNNING = 7  # the target is not running

//! The real binary as a child process: SIGKILL then resume, SIGTERM, exit codes.

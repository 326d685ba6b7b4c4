"""What the tests share that is not a fixture: helpers, real services started by PID, fakes of
hardware interfaces, stubs of real programs, paths. Never a test module."""

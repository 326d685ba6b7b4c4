"""Where things are, for tests."""

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
REPO = TESTS.parent
STUBS = SUPPORT / "stubs"
NETGUARD = SUPPORT / "netguard"
#: real data from elsewhere (read, never copied in): ../shared/fixtures beside the checkout
SHARED = REPO.parent / "shared"

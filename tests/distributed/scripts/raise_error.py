"""Fail on purpose, so the harness's error path can be tested."""

if __name__ == "__main__":
    raise ValueError("deliberate failure from raise_error.py")

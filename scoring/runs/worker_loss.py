"""The words of a run taken back because its worker stopped answering (a stale heartbeat).

The run's error keeps which attempts lost their worker, so that when the last one does, the
give-up email can say the worker kept dying (an infrastructure problem, or a model that
kills its worker) instead of blaming the model's data.
"""

import re

PREFIX = "the worker stopped answering during attempt"
ATTEMPTS = re.compile(rf"^{PREFIX}s? ([\d, and]+)$")


def message(attempts: list[int]) -> str:
    """'the worker stopped answering during attempt 3' or '... during attempts 1, 2 and 3'."""
    return f"{PREFIX}{'s' if len(attempts) > 1 else ''} {in_words(attempts)}"


def in_words(attempts: list[int]) -> str:
    """'3', '1 and 2', '1, 2 and 3'."""
    numbers = [str(number) for number in attempts]
    return numbers[0] if len(numbers) == 1 else f"{', '.join(numbers[:-1])} and {numbers[-1]}"


def lost_attempts(error: str) -> list[int]:
    """The attempts an error says lost their worker; [] when it is another error."""
    found = ATTEMPTS.match(error or "")
    return [int(number) for number in re.findall(r"\d+", found.group(1))] if found else []


def after_losing(error: str, attempt: int) -> str:
    """The error once `attempt` lost its worker too: the earlier losses of this series kept."""
    earlier = [number for number in lost_attempts(error) if number < attempt]
    return message([*earlier, attempt])

import traceback

reported = []


def report(message, *, exc_info=False):
    # the WebUI prints and carries on; tests read what was reported
    reported.append((message, traceback.format_exc() if exc_info else None))
    print(message)
    if exc_info:
        traceback.print_exc()

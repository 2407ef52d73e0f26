"""A command's `main(argv)` as a user runs it, for the CLI tests: (exit status, stdout, stderr)."""


def run_main(main, argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err

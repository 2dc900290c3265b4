from pipeline.commands import main

if __name__ == "__main__":  # not again when a spawned worker imports this file
    raise SystemExit(main(prog="python -m pipeline"))

"""``python -m phala_kms.cli``: the same as the ``phala-kms`` command."""

from . import main

if __name__ == "__main__":
    main()

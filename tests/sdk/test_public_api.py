"""The public surface: ``__all__`` is sorted and complete, ``dir()`` shows exactly it, and
every name resolves (lazily loaded ones included)."""

from __future__ import annotations

import phala_kms
import phala_kms.cli
import phala_kms.testing
from phala_kms import errors


def test_public_surface_is_sorted_and_complete() -> None:
    assert sorted(errors.__all__) == errors.__all__
    exported = set(phala_kms.__all__)
    for name in errors.__all__:
        assert name in exported
    for name in phala_kms.__all__:
        assert getattr(phala_kms, name) is not None
    assert sorted(set(phala_kms.__all__)) == phala_kms.__all__, "sorted, no duplicates"


def test_dir_lists_exactly_the_public_names() -> None:
    assert dir(phala_kms) == phala_kms.__all__
    assert dir(phala_kms.testing) == sorted(phala_kms.testing.__all__)
    for name in phala_kms.testing.__all__:
        assert getattr(phala_kms.testing, name) is not None


def test_every_name_the_cli_package_exports_resolves() -> None:
    # most load lazily, from the module that now holds them
    assert phala_kms.cli.__all__
    for name in phala_kms.cli.__all__:
        assert getattr(phala_kms.cli, name) is not None, name
    assert phala_kms.cli.to_jsonable((1, None)) == [1, None]


def test_the_trusted_signer_and_testing_helpers_are_public() -> None:
    assert phala_kms.TrustedSigner.__module__ == "phala_kms.models"
    assert "instant_retries" in phala_kms.testing.__all__
    assert "UNVERIFIED" not in dir(phala_kms)

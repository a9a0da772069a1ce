"""The OCI tag grammar and the other patterns that judge untrusted text: anchored at the very
end (``\\Z``), so a final newline never slips through as ``$`` would let it."""

from __future__ import annotations

import pytest

from watchdog import config, errors, models


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("1.2.3", True),
        ("v1.2.3-rc.1", True),
        ("_x", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("1.2.3\n", False),  # `$` matches before a final newline; the grammar must not
        ("1.2.3+build.5", False),  # '+' is no tag character
        (".hidden", False),
        ("-x", False),
        ("\u0663.\u0662.\u0661", False),  # Arabic-Indic digits: \d and \w would take them
        ("caf\u00e9", False),
        ("", False),
    ],
)
def test_tag_grammar(text: str, valid: bool) -> None:
    assert models.is_tag(text) is valid
    assert (models.TAG_RE.match(text) is not None) is valid  # callers using .match are safe too
    if valid:
        assert models.check_tag(text) == text
    else:
        with pytest.raises(errors.InvalidReference):
            models.check_tag(text)


def test_digest_and_names_refuse_a_final_newline() -> None:
    digest = "sha256:" + "a" * 64
    assert models.is_digest(digest)
    assert not models.is_digest(digest + "\n")
    assert models.DIGEST_RE.match(digest + "\n") is None
    assert not models.is_repository_path("team/app\n")
    with pytest.raises(errors.InvalidReference):
        models.ImageRef.parse("registry.example:5000\n/team/app")


def test_tag_filter_never_matches_outside_the_grammar() -> None:
    default = config.TagFilter()
    assert default.matches("1.2.3") and default.matches("v1.2.3-rc.1")
    assert not default.matches("1.2.3\n")
    assert not default.matches("1.2.3+build.5")
    assert not default.matches("\u0661.\u0662.\u0663")
    # a user's pattern with `$` is searched only in grammatical tags: no newline reaches it
    mine = config.TagFilter(include=(r"^release-\d+$",))
    assert mine.matches("release-7") and not mine.matches("release-7\n")

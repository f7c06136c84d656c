"""`regina.__all__` lists exactly the public names (the API cannot drift silently)."""

import regina


def test_public_names() -> None:
    public = {name for name in dir(regina) if not name.startswith("_")} - {
        "config",
        "definitions",
        "errors",
        "runtime",
        "vfs",
        "env_expansion",
        "providers",
        "registry",
    }
    public = {n for n in public if not isinstance(getattr(regina, n), type(regina))}
    assert public == set(regina.__all__)

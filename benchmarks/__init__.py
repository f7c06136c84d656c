"""Regina's benchmarks (not part of the test suite): `python -m benchmarks [--quick]`.

Each module starts its own private servers on 127.0.0.1 (Redis, the fake LLM, `regina worker`,
`regina web`, moto's S3) and stops them before returning. Figures and their conditions are kept
in docs/benchmarks.md.
"""

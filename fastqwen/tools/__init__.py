"""Tools on top of the core: sample sets, notebook views, the report, the benchmark, the server
(`serve/`), `say`, the CLI.

Nothing in the core imports this package; its extra dependencies come with the
`notebooks` extra (`pip install 'fastqwen[notebooks]'`), the server's with the `serve` extra.
"""

"""One training run, without gRPC, processes or a job database: what it is asked to do (`config`), its
data (`data`, `food101`), the loop (`loop`, with `model`, `events` and `resume`), its results
(`evaluation`) and their way into the model store (`publishing`). Shared by jobs and the `vision train`
CLI."""

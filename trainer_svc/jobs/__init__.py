"""Jobs: accepted (`uploads`), recorded (`database`, `records`), scheduled (`manager`), run in a worker
process (`supervisor` on the service's side, `worker` in the process). They train with
`trainer_svc.training`."""

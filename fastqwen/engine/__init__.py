"""The static-cache engine: `runner.FrameRunner` runs frames (`step.frame_step`) of a
`model.StaticModel` in the one loop (`loop.run_frames`), eagerly, compiled or graphed."""

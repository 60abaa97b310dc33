"""`vita capacity`: what one orchestrator process plus Redis sustain, measured against fake model services
(apps/fakes) so that only the serving path is loaded: turns/s, Redis operations and bytes per turn,
orchestrator CPU per turn, and the latency the orchestrator adds on top of the fakes' configured latency.
docs/CAPACITY.md turns the figures into a capacity plan."""

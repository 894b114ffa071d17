"""The lab's network: Mininet nodes that own their daemons (`nodes`, `daemons`), Open vSwitch
switches (`switch`), the topology (`mntopo`), the running net and what can be done to its
cluster (`cluster`), the run directories and their records (`rundir`), the machine's
preflight (`preflight`), and the two programs run inside nodes (`flood`, `seqflow`)."""

"""Running the lab: bringing it up and down (`lab.Lab`), reading and judging a running cluster
(`probes`), the main job (`job`), scenarios and plays (`scenarios`), the crowd (`crowd`), the
Mininet CLI's commands (`mncli`), plain `mn` (`mnlab`) and the gallery (`gallery`)."""

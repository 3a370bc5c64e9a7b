"""`spri-sft run`: the whole job from one recipe (generate → format → train → evaluate), stage-resumable."""

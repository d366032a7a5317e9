"""Prompts whose answers repeat them (speculative decoding's best case) and one whose answer does not."""

PASSAGE = ("The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips. Every night "
           "for ninety years its lamp had turned, sweeping the dark water so that ships could find their way past "
           "the rocks. The keeper, a quiet man named Elias, climbed the spiral stairs each evening at dusk, wound "
           "the clockwork, trimmed the wick and polished the great lens until it shone.")
REPEAT = [{"role": "user", "content": "Repeat this passage exactly, but change the keeper's name to Tomas:\n\n" + PASSAGE}]
FREE = [{"role": "user", "content": "Write a short story about a fox who learns to swim."}]

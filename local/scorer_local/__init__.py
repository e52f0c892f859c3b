"""The local world: a Tencent sandbox, the demo, process stacks and webhook body builders."""

"""Running untrusted packages: the limits, the parent-side client, the zygote that forks
sandboxes, the child side, and the confinement a sandbox applies to itself.

No Django here (an import contract holds it): the zygote imports these modules in an
isolated interpreter with a bare environment."""

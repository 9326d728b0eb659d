from nodesysctl.agent.cli import main

raise SystemExit(main())

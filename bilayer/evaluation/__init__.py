"""The paper's evaluation protocol on avatars (`protocol`, Sec. 4) and its report (`report`: JSON,
Table 2 layout, image grid). Above the runtime: it initializes and renders `Avatar`s."""

/** fleetswan-lab: a whole fleet on one machine (see docs/lab.md). */
export const LAB_VERSION = "0.1.0";

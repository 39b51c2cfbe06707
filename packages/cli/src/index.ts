export { main, helpText, allCommands } from "./main.js";

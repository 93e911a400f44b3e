// onnxcompress in JupyterLab and Notebook 7: "Compress with onnxcompress…" on an .onnx file (the
// file browser's context menu, or the command palette) writes a notebook beside the model with
// the compression explorer on it, opens it and runs it.
//
// The notebook runs once, on the open that follows its creation: the creating page leaves a
// mark in localStorage that the page showing the notebook takes (in Notebook 7 that is another
// browser tab). A notebook file alone can never ask to run itself.

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, InputDialog, showErrorMessage } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { Contents } from '@jupyterlab/services';

const COMMAND = 'onnxcompress:open-explorer';
const FILE_TYPE = 'onnx';
const MARK = 'onnxcompress:run-on-open:';
const MARK_LIFETIME_MS = 10 * 60 * 1000; // a mark left by a page that never opened its notebook expires

function explorerNotebook(model: string): Partial<Contents.IModel>['content'] {
  const source = [
    `# onnxcompress's explorer on ${model}, at the default settings (8 bits per weight).`,
    '# Change the settings above the tabs and press Compress to try others; pass',
    '# inputs="calib.npz" (your real inputs) to calibrate on them and compare the outputs there.',
    'from onnxcompress.widgets import CompressionExplorer',
    '',
    `explorer = CompressionExplorer(${JSON.stringify(model)})`,
    'explorer.run()',
    'explorer'
  ].join('\n');
  return {
    cells: [
      { cell_type: 'markdown', metadata: {}, source: `# Compress \`${model}\`` },
      { cell_type: 'code', metadata: {}, source, outputs: [], execution_count: null }
    ],
    metadata: { kernelspec: { name: 'python3', display_name: 'Python 3', language: 'python' } },
    nbformat: 4,
    nbformat_minor: 5
  };
}

function markToRun(path: string): void {
  window.localStorage.setItem(MARK + path, String(Date.now()));
}

function takeMark(path: string): boolean {
  const key = MARK + path;
  const when = window.localStorage.getItem(key);
  if (when === null) {
    return false;
  }
  window.localStorage.removeItem(key);
  return Date.now() - Number(when) < MARK_LIFETIME_MS;
}

async function freePath(contents: Contents.IManager, dir: string, stem: string): Promise<string> {
  for (let n = 0; ; n++) {
    const path = PathExt.join(dir, `${stem}${n ? `-${n}` : ''}.ipynb`);
    try {
      await contents.get(path, { content: false });
    } catch {
      return path; // nothing there yet
    }
  }
}

async function chooseModel(app: JupyterFrontEnd, dir: string): Promise<string | null> {
  const listing = await app.serviceManager.contents.get(dir, { content: true });
  const models = (listing.content as Contents.IModel[])
    .filter(item => item.type !== 'directory' && item.name.endsWith('.onnx'))
    .map(item => item.path);
  if (models.length === 0) {
    await showErrorMessage('onnxcompress', `No .onnx file in ${dir || 'the top folder'}: open the folder that holds the model.`);
    return null;
  }
  const choice = await InputDialog.getItem({ title: 'Compress with onnxcompress', items: models });
  return choice.button.accept ? choice.value : null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'onnxcompress-jupyter:plugin',
  description: 'Open the onnxcompress explorer on an ONNX model from the file browser or the command palette.',
  autoStart: true,
  requires: [IDocumentManager],
  optional: [IFileBrowserFactory, INotebookTracker, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    docManager: IDocumentManager,
    browsers: IFileBrowserFactory | null,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null
  ) => {
    if (!app.docRegistry.getFileType(FILE_TYPE)) {
      app.docRegistry.addFileType({
        name: FILE_TYPE,
        displayName: 'ONNX model',
        extensions: ['.onnx'],
        mimeTypes: ['application/octet-stream'],
        contentType: 'file',
        fileFormat: 'base64'
      });
    }

    const selectedModel = (): string | null => {
      const browser = browsers?.tracker.currentWidget;
      for (const item of browser?.selectedItems() ?? []) {
        if (item.type !== 'directory' && item.name.endsWith('.onnx')) {
          return item.path;
        }
      }
      return null;
    };

    app.commands.addCommand(COMMAND, {
      label: 'Compress with onnxcompress…',
      caption: 'Open a notebook beside the model with the onnxcompress explorer on it, already run',
      execute: async () => {
        const model = selectedModel() ?? (await chooseModel(app, browsers?.tracker.currentWidget?.model.path ?? ''));
        if (model === null) {
          return;
        }
        const dir = PathExt.dirname(model);
        const name = PathExt.basename(model);
        const path = await freePath(app.serviceManager.contents, dir, `${PathExt.basename(model, '.onnx')}.compress`);
        await app.serviceManager.contents.save(path, { type: 'notebook', format: 'json', content: explorerNotebook(name) });
        markToRun(path);
        docManager.openOrReveal(path);
      }
    });
    app.contextMenu.addItem({ command: COMMAND, selector: `.jp-DirListing-item[data-file-type="${FILE_TYPE}"]`, rank: 1 });
    palette?.addItem({ command: COMMAND, category: 'onnxcompress' });

    notebooks?.widgetAdded.connect(async (_, panel: NotebookPanel) => {
      await panel.context.ready;
      if (!takeMark(panel.context.path)) {
        return;
      }
      await panel.sessionContext.ready;
      await NotebookActions.runAll(panel.content, panel.sessionContext);
    });
  }
};

export default plugin;

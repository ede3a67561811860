"""Runs VoteMI's real panel (``VoteMIWidget``) on real Qt and real MRML, standing in for the Slicer application.

What is real: Qt 5.15 widgets (PyQt5, offscreen), the module's ``.ui`` file (loaded with PyQt5's uic),
the MRML scene and module logics (slicer-core, see ``mrml_helpers.HeadlessSlicer``), ``slicer.util``
from slicer-core, the VoteMI engine, its child processes and any HTTP server a test starts.

What stands in for the application, and only that:

* PythonQt's calling conventions on PyQt5 widgets (:class:`PythonQtStyle`): Qt properties read and
  written as attributes (``widget.text = "..."``, ``button.enabled``), ``connect("clicked(bool)", fn)``
  with C++ signatures, slots called with as many arguments as they take;
* the few Slicer widgets the ``.ui`` uses (ctkCollapsibleButton, qMRMLWidget, qMRMLNodeComboBox,
  qMRMLCheckableNodeComboBox), built on PyQt5 and listing the nodes of the real scene;
* ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``, written after Slicer's
  ``Base/Python/slicer`` sources: the wrapper stores typed values as parameters of a real
  ``vtkMRMLScriptedModuleNode`` and, as Slicer's does, writes every connected widget from the node
  whenever the node is modified (this is what reverses text typed into a bound QTextEdit);
* ``slicer.app`` (version, layout manager over a real layout node, default scene path) and the
  message boxes, which record what they would show and answer as the test says.

:func:`gil_holding_loop` drives the event loop the way Slicer's main thread does: it processes Qt
events and then waits while holding Python's GIL, so Python threads barely run.
"""

from __future__ import annotations

import ctypes
import importlib.util
import inspect
import os
import sys
import time
import types
import typing
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt5 import QtCore, QtGui, QtPrintSupport, QtTest, QtWidgets  # noqa: E402
from PyQt5.uic.Loader.loader import DynamicUILoader  # noqa: E402
from PyQt5.uic.Loader.qobjectcreator import LoaderCreatorPolicy  # noqa: E402
from PyQt5.uic.uiparser import UIParser  # noqa: E402

#: The module under test (VOTEMI_HARNESS_MODULE_DIR runs the tests against another copy, e.g. an older one).
MODULE_DIR = Path(os.environ.get("VOTEMI_HARNESS_MODULE_DIR") or Path(__file__).resolve().parents[1] / "VoteMI")

# --------------------------------------------------------------------------------------------
# PythonQt conventions on PyQt5 objects


class _SignalProxy:
    """A bound signal that also accepts C++ type names as overload keys (``signal["vtkMRMLScene*"]``)."""

    def __init__(self, bound):
        self._bound = bound

    def __getitem__(self, key):
        try:
            return self._bound[key]
        except (KeyError, TypeError):
            return self._bound

    def connect(self, slot):
        return self._bound.connect(slot)

    def disconnect(self, slot=None):
        return self._bound.disconnect() if slot is None else self._bound.disconnect(slot)

    def emit(self, *args):
        return self._bound.emit(*args)


def _positional_count(function):
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


#: Off while uic builds a .ui: uic calls getters (``objectName()``) that PythonQt turns into properties.
_STYLE = {"on": True}


class PythonQtStyle:
    """Mixin giving a PyQt5 QObject the attribute style of PythonQt, as Slicer's Python sees Qt."""

    def __getattribute__(self, name):
        if name[:1] != "_" and _STYLE["on"]:
            meta = QtCore.QObject.metaObject(self)
            index = meta.indexOfProperty(name)
            if index >= 0:
                return meta.property(index).read(self)
        value = object.__getattribute__(self, name)
        return _SignalProxy(value) if isinstance(value, QtCore.pyqtBoundSignal) else value

    def __setattr__(self, name, value):
        if name[:1] != "_" and _STYLE["on"]:
            meta = QtCore.QObject.metaObject(self)
            index = meta.indexOfProperty(name)
            if index >= 0:
                if not meta.property(index).write(self, value):
                    raise AttributeError(f"cannot set {type(self).__name__}.{name} to {value!r}")
                return
        object.__setattr__(self, name, value)

    @property
    def name(self):
        return QtCore.QObject.objectName(self)

    def __bool__(self):  # PyQt5 makes an empty QComboBox falsy (len); a PythonQt object is always true
        return True

    def _pythonqt_signal(self, signature):
        name, _, arguments = signature.partition("(")
        return _SignalProxy(object.__getattribute__(self, name))[arguments.rstrip(")").replace(" ", "") or ()]

    def connect(self, signature, slot):
        """``connect("clicked(bool)", slot)``; the slot gets as many of the signal's arguments as it takes."""
        count = _positional_count(slot)
        adapted = slot if count is None else (lambda *args: slot(*args[:count]))
        self.__dict__.setdefault("_pythonqt_slots", {})[(signature, slot)] = adapted
        self._pythonqt_signal(signature).connect(adapted)
        return True

    def disconnect(self, signature, slot):
        adapted = self.__dict__.get("_pythonqt_slots", {}).pop((signature, slot), slot)
        self._pythonqt_signal(signature).disconnect(adapted)
        return True


_compat_classes = {}


def compat(qt_class):
    """The PythonQt-style subclass of a Qt class (one per class)."""
    if qt_class not in _compat_classes:
        _compat_classes[qt_class] = type(qt_class.__name__, (PythonQtStyle, qt_class), {})
    return _compat_classes[qt_class]


def _qt_module():
    """The ``qt`` module Slicer's Python imports: QtCore, QtGui, QtWidgets and QtPrintSupport, widgets in
    PythonQt style."""
    module = types.ModuleType("qt")

    def lookup(name):
        for source in (QtWidgets, QtGui, QtCore, QtPrintSupport):
            value = getattr(source, name, None)
            if value is None:
                continue
            if isinstance(value, type) and issubclass(value, QtCore.QObject) and name not in ("QApplication",):
                return compat(value)
            return value
        raise AttributeError(f"module 'qt' has no attribute '{name}'")

    module.__getattr__ = lookup
    return module


# --------------------------------------------------------------------------------------------
# Slicer widgets the .ui uses, on PyQt5 and the real MRML scene


class ctkCollapsibleButton(PythonQtStyle, QtWidgets.QGroupBox):
    """A titled section that can be collapsed (drawn as a group box)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def getText(self):
        return QtWidgets.QGroupBox.title(self)

    def setText(self, text):
        self.setTitle(text)

    def getCollapsed(self):
        return self._collapsed

    def setCollapsed(self, collapsed):
        self._collapsed = bool(collapsed)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        # Collapsed, only the title line is left, as ctkCollapsibleButton shows it.
        self.setMaximumHeight(self.fontMetrics().height() + 8 if self._collapsed else 16777215)

    text = QtCore.pyqtProperty(str, getText, setText)
    collapsed = QtCore.pyqtProperty(bool, getCollapsed, setCollapsed)


class qMRMLWidget(PythonQtStyle, QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.pyqtSignal(object)

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return getattr(self, "_scene", None)


class qMRMLNodeComboBox(PythonQtStyle, QtWidgets.QComboBox):
    """Lists the scene's nodes of ``nodeTypes`` (kept up to date through scene observers)."""

    currentNodeChanged = QtCore.pyqtSignal(object)
    nodeAdded = QtCore.pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._observers = []
        self._types = []
        self._none_enabled = False
        self._nodes = []
        object.__getattribute__(self, "currentIndexChanged").connect(
            lambda index: self.currentNodeChanged.emit(self.currentNode()))

    # Properties the .ui sets
    def setNodeTypes(self, types_):
        self._types = list(types_)
        self._refresh()

    def getNodeTypes(self):
        return list(self._types)

    nodeTypes = QtCore.pyqtProperty("QStringList", getNodeTypes, setNodeTypes)

    def setShowChildNodeTypes(self, value):
        self._show_children = bool(value)

    def setAddEnabled(self, value):
        pass  # nothing to add from here: the panel never offers it

    def setRemoveEnabled(self, value):
        pass

    def setNoneEnabled(self, value):
        self._none_enabled = bool(value)
        self._refresh()

    # Scene
    def setMRMLScene(self, scene):
        import vtk

        self.detach()
        self._scene = scene
        self._observers = [scene.AddObserver(event, lambda caller, event: self._refresh())
                           for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, vtk.vtkCommand.ModifiedEvent)]
        self._refresh()

    def detach(self):
        """Stop observing the scene (Qt deletes the C++ widget; the scene would call a dead object)."""
        for tag in self._observers:
            self._scene.RemoveObserver(tag)
        self._observers = []

    def _wanted(self, node):
        return any(node.IsA(name) for name in self._types) and (
            getattr(self, "_show_children", True) or node.GetClassName() in self._types)

    def _refresh(self):
        if self._scene is None:
            return
        current = self.currentNode()
        nodes = [self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes())]
        self._nodes = ([None] if self._none_enabled else []) + [node for node in nodes if node and self._wanted(node)]
        was = self.blockSignals(True)
        self.clear()
        for node in self._nodes:
            self._add_item(node)
        self.setCurrentIndex(self._nodes.index(current) if current in self._nodes else (0 if self._nodes else -1))
        self.blockSignals(was)
        if self.currentNode() is not current:
            self.currentNodeChanged.emit(self.currentNode())

    def _add_item(self, node):
        self.addItem("None" if node is None else node.GetName())

    def currentNode(self):
        index = QtWidgets.QComboBox.currentIndex(self)
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def setCurrentNode(self, node):
        if node is not None and node not in self._nodes:
            self._refresh()
        self.setCurrentIndex(self._nodes.index(node) if node in self._nodes else -1)

    def nodeCount(self):
        return len([node for node in self._nodes if node is not None])

    def nodeFromIndex(self, index):
        return [node for node in self._nodes if node is not None][index]


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    """Node list with a check box per node."""

    checkedNodesChanged = QtCore.pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._checked = set()
        self.setModel(QtGui.QStandardItemModel(self))
        self.model().itemChanged.connect(self._item_changed)

    def _add_item(self, node):
        item = QtGui.QStandardItem("None" if node is None else node.GetName())
        item.setCheckable(node is not None)
        item.setCheckState(QtCore.Qt.Checked if node is not None and node.GetID() in self._checked
                           else QtCore.Qt.Unchecked)
        self.model().appendRow(item)

    def _item_changed(self, item):
        node = self._nodes[item.row()]
        if node is not None:
            (self._checked.add if item.checkState() == QtCore.Qt.Checked else self._checked.discard)(node.GetID())
            self.checkedNodesChanged.emit()

    def setCheckState(self, node, state):
        self.model().item(self._nodes.index(node)).setCheckState(state)

    def checkState(self, node):
        return self.model().item(self._nodes.index(node)).checkState()

    def checkedNodes(self):
        return [node for node in self._nodes if node is not None and node.GetID() in self._checked]

    def paintEvent(self, event):
        # The box shows the checked nodes, not the current row.
        painter = QtWidgets.QStylePainter(self)
        option = QtWidgets.QStyleOptionComboBox()
        self.initStyleOption(option)
        option.currentText = ", ".join(node.GetName() for node in self.checkedNodes()) or "None"
        painter.drawComplexControl(QtWidgets.QStyle.CC_ComboBox, option)
        painter.drawControl(QtWidgets.QStyle.CE_ComboBoxLabel, option)


CUSTOM_WIDGETS = {cls.__name__: cls for cls in (ctkCollapsibleButton, qMRMLWidget, qMRMLNodeComboBox,
                                                 qMRMLCheckableNodeComboBox)}


class _Widgets:
    """uic looks up every class here first: the PythonQt-style ones."""

    @staticmethod
    def search(name):
        for source in (QtWidgets, QtGui):
            value = getattr(source, name, None)
            if isinstance(value, type) and issubclass(value, QtCore.QObject):
                return compat(value)
        return None


class _CustomWidgets:
    def addCustomWidget(self, widget_class, base_class, module):
        pass

    @staticmethod
    def search(name):
        return CUSTOM_WIDGETS.get(name)


class _Policy(LoaderCreatorPolicy):
    def createQtGuiWidgetsWrappers(self):
        return [_Widgets, *super().createQtGuiWidgetsWrappers()]

    def createCustomWidgetLoader(self):
        return _CustomWidgets()


class _Loader(DynamicUILoader):
    def __init__(self):
        UIParser.__init__(self, QtCore, QtGui, QtWidgets, _Policy(""))


def load_ui(path):
    """``slicer.util.loadUI``: the .ui file as PythonQt-style widgets, with the Slicer widgets above."""
    _STYLE["on"] = False
    try:
        return _Loader().loadUi(str(path), None, "_rc")
    finally:
        _STYLE["on"] = True


# --------------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper, as Slicer's behaves


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


class _Parameter:
    """One typed field stored in the parameter node (a parameter, or a node reference for nodes)."""

    def __init__(self, name, kind, default, annotations):
        self.name, self.kind, self.default, self.annotations = name, kind, default, annotations

    def is_node(self):
        return isinstance(self.kind, type) and self.kind.__name__.startswith("vtkMRML")

    def read(self, node):
        if self.is_node():
            return node.GetNodeReference(self.name)
        if not node.HasParameter(self.name):
            return self.default
        text = node.GetParameter(self.name)
        return (text == "True") if self.kind is bool else self.kind(text)

    def write(self, node, value):
        if self.is_node():
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        value = self.kind(value)
        for annotation in self.annotations:
            if isinstance(annotation, Choice) and value not in annotation.choices:
                raise ValueError(f"{value!r} is not one of {annotation.choices}")
            if isinstance(annotation, WithinRange) and not annotation.minimum <= value <= annotation.maximum:
                raise ValueError(f"{value!r} is not within [{annotation.minimum}, {annotation.maximum}]")
        node.SetParameter(self.name, str(value))


class _Connector:
    """Slicer's GUI connectors: which signal means 'changed', how to read and write the widget."""

    def __init__(self, widget, parameter):
        self.widget, self.parameter = widget, parameter
        name = type(widget).__name__
        if name == "QComboBox":
            choices = next(a for a in parameter.annotations if isinstance(a, Choice)).choices
            widget.clear()
            for choice in choices:
                widget.addItem(str(choice))
        elif name == "QSpinBox":
            bounds = next((a for a in parameter.annotations if isinstance(a, WithinRange)), None)
            if bounds is not None:
                widget.setRange(bounds.minimum, bounds.maximum)
        self.signal = {"QCheckBox": "stateChanged", "QSpinBox": "valueChanged", "QComboBox": "currentIndexChanged",
                       "QLineEdit": "textChanged", "QTextEdit": "textChanged",
                       "qMRMLNodeComboBox": "currentNodeChanged"}[name]

    def read(self):
        widget, name = self.widget, type(self.widget).__name__
        if name == "QComboBox":
            return next(a for a in self.parameter.annotations if isinstance(a, Choice)).choices[widget.currentIndex]
        if name == "QTextEdit":
            return widget.toPlainText()
        if name == "qMRMLNodeComboBox":
            return widget.currentNode()
        return getattr(widget, {"QCheckBox": "checked", "QSpinBox": "value", "QLineEdit": "text"}[name])

    def write(self, value):
        widget, name = self.widget, type(self.widget).__name__
        if name == "QCheckBox":
            widget.checked = value
        elif name == "QSpinBox":
            widget.value = value
        elif name == "QComboBox":
            widget.currentIndex = next(a for a in self.parameter.annotations if isinstance(a, Choice)
                                       ).choices.index(value)
        elif name == "QLineEdit":
            widget.text = value
        elif name == "QTextEdit":
            widget.setPlainText(value)
        else:
            widget.setCurrentNode(value)


def parameterNodeWrapper(cls):
    """Slicer's ``@parameterNodeWrapper``: typed properties stored in a vtkMRMLScriptedModuleNode, GUI binding."""
    hints = typing.get_type_hints(cls, include_extras=True)
    parameters = {}
    for name, hint in hints.items():
        kind, annotations = hint, ()
        if typing.get_origin(hint) is typing.Annotated:
            kind, *annotations = typing.get_args(hint)
        parameters[name] = _Parameter(name, kind, getattr(cls, name, None), tuple(annotations))

    def __init__(self, parameter_node):
        self.parameterNode = parameter_node
        self._guis = {}
        self._next_tag = 0
        self._updating = False
        self._observing = False
        for parameter in parameters.values():
            if not parameter.is_node() and not parameter_node.HasParameter(parameter.name):
                parameter.write(parameter_node, parameter.default)

    def make_property(parameter):
        return property(lambda self: parameter.read(self.parameterNode),
                        lambda self, value: parameter.write(self.parameterNode, value))

    def update_gui(self):
        # As Slicer's wrapper: every widget is written from the node on every modification.
        if self._updating:
            return
        self._updating = True
        try:
            for connectors in self._guis.values():
                for connector in connectors:
                    connector.write(connector.parameter.read(self.parameterNode))
        finally:
            self._updating = False

    def connectGui(self, ui):
        import slicer

        widgets = [w for w in vars(ui).values() if hasattr(w, "property") and w.property("SlicerParameterName")]
        connectors = [_Connector(w, parameters[w.property("SlicerParameterName")]) for w in widgets]
        tag = self._next_tag
        self._next_tag += 1
        self._guis[tag] = connectors
        for connector in connectors:
            connector.write(connector.parameter.read(self.parameterNode))

            def changed(*args, connector=connector):
                with slicer.util.NodeModify(self.parameterNode):
                    if not self._updating:
                        connector.parameter.write(self.parameterNode, connector.read())

            connector.slot = changed
            object.__getattribute__(connector.widget, connector.signal).connect(changed)
        if not self._observing:
            self.parameterNode.AddObserver("ModifiedEvent", lambda caller, event: update_gui(self))
            self._observing = True
        return tag

    def disconnectGui(self, tag):
        for connector in self._guis.pop(tag, []):
            object.__getattribute__(connector.widget, connector.signal).disconnect(connector.slot)

    namespace = {"__init__": __init__, "connectGui": connectGui, "disconnectGui": disconnectGui,
                 "allParameters": parameters,
                 "StartModify": lambda self: self.parameterNode.StartModify(),
                 "EndModify": lambda self, was: self.parameterNode.EndModify(was),
                 "AddObserver": lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
                     event, callback, priority),
                 "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag),
                 "Modified": lambda self: self.parameterNode.Modified()}
    namespace.update({name: make_property(parameter) for name, parameter in parameters.items()})
    return type(cls.__name__, (), {"__doc__": cls.__doc__, **namespace})


# --------------------------------------------------------------------------------------------
# slicer.ScriptedLoadableModule and slicer.app


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    """Slicer's base: ``self.parent`` is the module panel, ``self.layout`` its layout."""

    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.layout = parent.layout()
        self.developerMode = False
        self.reloaded = 0

    def resourcePath(self, filename):
        return str(MODULE_DIR / "Resources" / filename)

    def setup(self):
        pass

    def onReload(self):
        self.reloaded += 1  # Slicer re-reads the module file here


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node.SetModuleName(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message, msec=None):
        pass


#: Layouts of Slicer's layout manager that hold a plot view (Four-Up, Conventional and 3D-only with a plot).
PLOT_LAYOUTS = {35, 36, 37, 38}


class _PlotView:
    def __init__(self):
        self.connections = []

    def connect(self, signature, slot):
        self.connections.append((signature, slot))

    def disconnect(self, signature, slot):
        self.connections.remove((signature, slot))


class LayoutManager:
    """Slicer's layout manager over the scene's real layout node: ``layout``, plot views, slice views."""

    def __init__(self, app):
        import slicer

        self.scene = app.scene
        self.layout_node = slicer.vtkMRMLLayoutNode()
        self.layout_node.SetSingletonTag("vtkMRMLLayoutNode")
        self.layout_node = self.scene.AddNode(self.layout_node)
        self.layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self._plot_view = _PlotView()

    @property
    def layout(self):
        return self.layout_node.GetViewArrangement()

    @layout.setter
    def layout(self, value):
        self.layout_node.SetViewArrangement(value)

    @property
    def plotViewCount(self):
        if self.layout not in PLOT_LAYOUTS:
            return 0
        if self.scene.GetNodesByClass("vtkMRMLPlotViewNode").GetNumberOfItems() == 0:
            self.scene.AddNewNodeByClass("vtkMRMLPlotViewNode", "PlotView1")  # the layout manager makes one
        return 1

    def plotWidget(self, index):
        plot_view = self._plot_view
        return types.SimpleNamespace(plotView=lambda: plot_view)


class Dialogs:
    """Message boxes: each is recorded as (kind, text); questions are answered from ``answers`` (default yes).

    ``details`` holds each box's ``detailedText`` (the "Show Details..." pane), "" when it has none.
    """

    def __init__(self):
        self.shown = []
        self.details = []
        self.answers = []

    def _show(self, kind, text, **kwargs):
        self.shown.append((kind, str(text)))
        self.details.append(str(kwargs.get("detailedText", "")))

    def _ask(self, kind, text, **kwargs):
        self.shown.append((kind, str(text)))
        return self.answers.pop(0) if self.answers else True

    def install(self, util, monkeypatch):
        for name in ("errorDisplay", "warningDisplay", "infoDisplay"):
            monkeypatch.setattr(util, name, lambda text, *args, _kind=name, **kwargs: self._show(_kind, text, **kwargs))
        for name in ("confirmYesNoDisplay", "confirmOkCancelDisplay"):
            monkeypatch.setattr(util, name, lambda text, *args, _kind=name, **kwargs: self._ask(_kind, text))

    def of(self, kind):
        return [text for shown_kind, text in self.shown if shown_kind == kind]


def qt_application():
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["VoteMI-harness"])
    app.setOrganizationName("VoteMI-harness")
    app.setApplicationName("Slicer")
    return app


# --------------------------------------------------------------------------------------------
# The event loop as Slicer's main thread runs it

_libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL, as Slicer's idle GUI thread does


def gil_holding_loop(until, timeout_s=60.0, idle_ms=10):
    """Process Qt events until ``until()`` is true; between rounds wait ``idle_ms`` holding the GIL.

    Returns the seconds it took; raises TimeoutError after ``timeout_s``.
    """
    app = QtWidgets.QApplication.instance()
    started = time.perf_counter()
    while not until():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"not done after {timeout_s:.0f} s")
        app.processEvents()
        _libc.usleep(int(idle_ms * 1000))
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# The panel


class SlicerPanel:
    """VoteMI.py loaded as Slicer loads it, its widget set up in a module panel, on ``headless``'s scene."""

    def __init__(self, headless, monkeypatch, tmp_path, slicer_version=(5, 10)):
        import slicer
        import slicer.util

        self.headless = headless
        self.qapp = qt_application()
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(tmp_path / "settings"))
        self.dialogs = Dialogs()
        self.dialogs.install(slicer.util, monkeypatch)
        # PythonQt prints an exception raised in a slot and goes on; PyQt5 would abort the application.
        self.slot_errors = []
        monkeypatch.setattr(sys, "excepthook", lambda kind, error, trace: self.slot_errors.append(error))
        self.saved_path = None
        scripted = types.ModuleType("slicer.ScriptedLoadableModule")
        for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest):
            setattr(scripted, cls.__name__, cls)
        wrapper = types.ModuleType("slicer.parameterNodeWrapper")
        wrapper.parameterNodeWrapper, wrapper.Choice, wrapper.WithinRange = parameterNodeWrapper, Choice, WithinRange
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        i18n.translate = lambda context, text: text
        ctk = types.ModuleType("ctk")
        ctk.ctkCollapsibleButton = ctkCollapsibleButton
        for name, module in {"qt": _qt_module(), "ctk": ctk, "slicer.ScriptedLoadableModule": scripted,
                             "slicer.parameterNodeWrapper": wrapper, "slicer.i18n": i18n}.items():
            monkeypatch.setitem(sys.modules, name, module)
        for name, cls in CUSTOM_WIDGETS.items():
            monkeypatch.setattr(slicer, name, cls, raising=False)
        monkeypatch.setattr(slicer, "mrmlScene", headless.scene, raising=False)
        self.layout_manager = LayoutManager(headless)
        self.app = types.SimpleNamespace(
            majorVersion=slicer_version[0], minorVersion=slicer_version[1], testingEnabled=lambda: False,
            layoutManager=lambda: self.layout_manager, defaultScenePath=str(tmp_path / "scenes"),
            temporaryPath=str(tmp_path / "slicer-temp"),
            processEvents=self.qapp.processEvents, setOverrideCursor=self.qapp.setOverrideCursor,
            restoreOverrideCursor=self.qapp.restoreOverrideCursor)
        monkeypatch.setattr(slicer, "app", self.app, raising=False)
        plots = types.SimpleNamespace(logic=lambda: headless.logics["Plots"])
        monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(plots=plots), raising=False)
        monkeypatch.setattr(slicer.util, "loadUI", load_ui)
        monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
        monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName",
                            staticmethod(lambda *args, **kwargs: self._save_dialog(args)))
        monkeypatch.syspath_prepend(str(MODULE_DIR))
        spec = importlib.util.spec_from_file_location("VoteMI", MODULE_DIR / "VoteMI.py")
        self.module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "VoteMI", self.module)
        spec.loader.exec_module(self.module)
        self.module_panel = compat(QtWidgets.QWidget)()
        QtWidgets.QVBoxLayout(self.module_panel)
        self.module_panel.isEntered = False
        self.module_panel.resize(420, 980)
        self.widget = self.module.VoteMIWidget(self.module_panel)

    @property
    def run_class(self):
        """The class of the panel's runs (``VoteMISlicerLib.run.VoteMIRun``; ``VoteMI.VoteMIRun`` in a copy from
        before the split), or None in a copy older than both."""
        if (MODULE_DIR / "VoteMISlicerLib" / "run.py").is_file():
            from VoteMISlicerLib.run import VoteMIRun

            return VoteMIRun
        return getattr(self.module, "VoteMIRun", None)

    def _save_dialog(self, args):
        self.save_dialog_args = args
        return self.saved_path or ""  # PythonQt returns the chosen path only

    def setup(self):
        self.widget.setup()
        self.module_panel.isEntered = True
        self.widget.enter()
        self.module_panel.show()
        return self

    @property
    def ui(self):
        return self.widget.ui

    def click(self, button):
        QtTest.QTest.mouseClick(button, QtCore.Qt.LeftButton)

    def type_into(self, widget, text):
        widget.setFocus()
        QtTest.QTest.keyClicks(widget, text)
        self.qapp.processEvents()

    def run_until(self, until, timeout_s=60.0, idle_ms=10):
        return gil_holding_loop(until, timeout_s, idle_ms)

    def idle(self):
        """No run (Cancel hidden) and no server check under way."""
        return not self.widget.ui.cancelButton.visible and getattr(self.widget, "_statusCheck", None) is None

    def close(self):
        try:
            if getattr(self.widget, "logic", None) is not None:
                self.widget.cleanup()
        finally:
            for combo in self.module_panel.findChildren(qMRMLNodeComboBox):
                combo.detach()
        self.module_panel.close()
        self.module_panel.deleteLater()
        self.qapp.processEvents()

using System.Buffers;
using System.IO.Pipelines;

namespace Transport.Winsock.Connections;

/// <summary>
/// The bytes of an <see cref="InputPipe"/> or <see cref="OutputPipe"/> and its writer's place in them: the
/// readable bytes run from (Head, HeadIndex) to (ReadTail, ReadTailIndex); the writer writes into the
/// tail, after its End, Buffered bytes so far, and a commit makes them readable. Segments are rented from
/// the shared <see cref="PipeSegment"/> pool with memory of the options' pool, and go back as the reader
/// is done with them.
/// </summary>
/// <remarks>
/// A mutable struct in a field of its pipe, used only through that field (never copied, never readonly),
/// so the list costs the pipe no object of its own. Changed under its pipe's lock, but for the writer's
/// own GetMemory and Advance between flushes, which only the writer calls, as with a Pipe's writer.
/// </remarks>
internal struct PipeSegmentList
{
    private PipeSegment? _head;
    private int _headIndex;
    private PipeSegment? _readTail;
    private int _readTailIndex;
    private PipeSegment? _tail;
    private int _buffered;
    // Written since the last commit: the _buffered bytes, and those of earlier segments the writer left.
    private long _unflushed;
    // Between the writer's GetMemory and its next commit: the tail must not be returned.
    private bool _writing;
    // Whether the writer was given memory: the rest of the tail's block after its End and the Buffered
    // bytes, computed while writing rather than kept as a Memory (16 bytes less a pipe). Cleared when the
    // writer completes and as the last segment goes.
    private bool _hasWritable;

    /// <summary>The first unread segment; null once the pipe holds none.</summary>
    public readonly PipeSegment? Head => _head;

    public readonly int HeadIndex => _headIndex;

    /// <summary>Where the last commit ended.</summary>
    public readonly PipeSegment? ReadTail => _readTail;

    public readonly int ReadTailIndex => _readTailIndex;

    /// <summary>The bytes written since the last commit.</summary>
    public readonly long Unflushed => _unflushed;

    /// <summary>The committed bytes not yet consumed; only while there is a head.</summary>
    public readonly ReadOnlySequence<byte> Readable => new(_head!, _headIndex, _readTail!, _readTailIndex);

    /// <summary>
    /// The writer's memory, when it already holds enough for <paramref name="sizeHint"/>; otherwise its pipe
    /// takes the lock and calls <see cref="EnsureWritable"/>.
    /// </summary>
    public readonly bool TryGetMemory(int sizeHint, out Memory<byte> memory)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sizeHint);
        // Not writing, the reader may be giving the tail back (ReleaseIfIdle): it is not looked at then.
        var length = WritableLength;
        if (length == 0 || length < sizeHint)
        {
            memory = default;
            return false;
        }

        memory = _tail!.Block[(_tail.End + _buffered)..];
        return true;
    }

    /// <summary>
    /// How much of the tail's block the writer may still write into, only between its GetMemory and the next
    /// commit (while the tail cannot go back); 0 otherwise.
    /// </summary>
    private readonly int WritableLength => _writing && _hasWritable ? _tail!.Block.Length - _tail.End - _buffered : 0;

    public void Advance(int bytes)
    {
        if ((uint)bytes > (uint)WritableLength)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), "Advanced past the end of the memory the writer was given.");
        }

        _buffered += bytes;
        _unflushed += bytes;
    }

    /// <summary>
    /// Under the lock: memory of at least <paramref name="sizeHint"/> bytes for the writer, the rest of the
    /// tail's block if that is enough, else a new segment's; a first segment starts at <paramref name="firstRunningIndex"/>.
    /// </summary>
    public Memory<byte> EnsureWritable(PipeOptions options, int sizeHint, long firstRunningIndex)
    {
        _writing = true;
        if (_tail is null)
        {
            _tail = _head = _readTail = PipeSegment.Rent(options, sizeHint, firstRunningIndex);
            _headIndex = _readTailIndex = 0;
            _hasWritable = true;
            return _tail.Block;
        }

        var free = _tail.Block.Length - _tail.End - _buffered;
        if (free > 0 && free >= sizeHint)
        {
            _hasWritable = true;
            return _tail.Block[(_tail.End + _buffered)..];
        }

        // The tail's written bytes stay in it; the writer goes on in a new segment.
        _tail.End += _buffered;
        _tail.SetWritten();
        _buffered = 0;
        var next = PipeSegment.Rent(options, sizeHint, _tail.RunningIndex + _tail.End);
        _tail.SetNext(next);
        _tail = next;
        _hasWritable = true;
        return next.Block;
    }

    /// <summary>Under the lock: makes what was written readable, and ends the writing; returns how many bytes that was.</summary>
    public long Commit()
    {
        _writing = false;
        var committed = _unflushed;
        if (committed == 0)
        {
            return 0;
        }

        _tail!.End += _buffered;
        _tail.SetWritten();
        _buffered = 0;
        _readTail = _tail;
        _readTailIndex = _tail.End;
        _unflushed = 0;
        return committed;
    }

    /// <summary>The writer completed: it is given no more of this memory.</summary>
    public void DropWritable() => _hasWritable = false;

    /// <summary>Whether <paramref name="segment"/> is one of the unconsumed ones.</summary>
    public readonly bool Contains(object segment)
    {
        for (var s = _head; s is not null; s = (PipeSegment?)s.Next)
        {
            if (s == segment)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Under the lock: the bytes before (<paramref name="segment"/>, <paramref name="index"/>), a position in
    /// the readable bytes, are consumed, and the segments they leave behind go back.
    /// </summary>
    public void ConsumeTo(PipeSegment segment, int index)
    {
        while (_head != segment)
        {
            var done = _head!;
            _head = (PipeSegment?)done.Next;
            PipeSegment.Return(done);
        }

        _headIndex = index;
        // A segment consumed to its end goes too, unless the writer still writes into it.
        while (_head != _tail && _headIndex == _head!.End)
        {
            var done = _head;
            _head = (PipeSegment?)done.Next;
            _headIndex = 0;
            PipeSegment.Return(done);
        }
    }

    /// <summary>Under the lock: all consumed and nothing being written: the last segment goes too, so an idle pipe holds no memory.</summary>
    public void ReleaseIfIdle()
    {
        if (!_writing && _buffered == 0 && _head is not null && _head == _tail && _headIndex == _head.End)
        {
            PipeSegment.Return(_head);
            _head = _tail = _readTail = null;
            _headIndex = _readTailIndex = 0;
            _hasWritable = false;
        }
    }

    /// <summary>Under the lock: every segment goes back, written, committed or not, and the writer holds no memory.</summary>
    public void ReturnAll()
    {
        var segment = _head;
        while (segment is not null)
        {
            var next = (PipeSegment?)segment.Next;
            PipeSegment.Return(segment);
            segment = next;
        }

        _head = _tail = _readTail = null;
        _headIndex = _readTailIndex = _buffered = 0;
        _hasWritable = false;
        _writing = false;
        _unflushed = 0;
    }
}

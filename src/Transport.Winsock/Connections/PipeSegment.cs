using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;

namespace Transport.Winsock.Connections;

/// <summary>
/// A block of the options' memory pool (or, for a write larger than its blocks, of the shared array pool)
/// in an <see cref="InputPipe"/>'s or <see cref="OutputPipe"/>'s list of bytes. The segment objects are
/// shared by every pipe of every connection, so an idle pipe holds none.
/// </summary>
internal sealed class PipeSegment : ReadOnlySequenceSegment<byte>
{
    private static readonly ConcurrentQueue<PipeSegment> s_pool = new();
    private static readonly int MaxPooled = 64 * Environment.ProcessorCount;
    private static int s_pooled;

    private IMemoryOwner<byte>? _owner;
    private byte[]? _array;

    /// <summary>The whole block, written or not.</summary>
    public Memory<byte> Block { get; private set; }

    /// <summary>The bytes committed to this segment so far.</summary>
    public int End { get; set; }

    /// <summary>A segment of at least <paramref name="sizeHint"/> bytes (and at least MinimumSegmentSize), starting at <paramref name="runningIndex"/>.</summary>
    public static PipeSegment Rent(PipeOptions options, int sizeHint, long runningIndex)
    {
        if (s_pool.TryDequeue(out var segment))
        {
            Interlocked.Decrement(ref s_pooled);
        }
        else
        {
            segment = new PipeSegment();
        }

        var pool = options.Pool;
        var size = Math.Max(options.MinimumSegmentSize, sizeHint);
        if (sizeHint <= pool.MaxBufferSize)
        {
            // A minimum segment size over the pool's blocks is capped at them, as a Pipe does.
            segment._owner = pool.Rent(Math.Min(size, pool.MaxBufferSize));
            segment.Block = segment._owner.Memory;
        }
        else
        {
            segment._array = ArrayPool<byte>.Shared.Rent(size);
            segment.Block = segment._array;
        }

        segment.RunningIndex = runningIndex;
        return segment;
    }

    /// <summary>Gives the segment's memory back, and the segment object to the shared pool.</summary>
    public static void Return(PipeSegment segment)
    {
        segment._owner?.Dispose();
        if (segment._array is { } array)
        {
            ArrayPool<byte>.Shared.Return(array);
        }

        segment._owner = null;
        segment._array = null;
        segment.Block = default;
        segment.Memory = default;
        segment.Next = null;
        segment.End = 0;
        if (Interlocked.Increment(ref s_pooled) <= MaxPooled)
        {
            s_pool.Enqueue(segment);
        }
        else
        {
            Interlocked.Decrement(ref s_pooled);
        }
    }

    /// <summary>Publishes what was committed to readers of the sequence.</summary>
    public void SetWritten() => Memory = Block[..End];

    public void SetNext(PipeSegment next) => Next = next;
}
